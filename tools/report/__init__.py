"""The conformance report: collect.py reads files, model.py builds the matrix,
render_html.py and render_md.py write it, report.py is the command line.
"""
