"""Files of an action: its input root staged from CAS, its declared outputs uploaded."""

import os

from buildgrid._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2

from tools.remote.cas_client import digest_of


def stage(cas, root_digest, path):
    """Writes the input root into path (which must not exist)."""
    dirs = cas.get_tree(root_digest)
    files = []  # (path, digest, executable)

    def walk(directory, where):
        os.makedirs(where, exist_ok=True)
        for f in directory.files:
            files.append((os.path.join(where, f.name), f.digest, f.is_executable))
        for s in directory.symlinks:
            os.symlink(s.target, os.path.join(where, s.name))
        for sub in directory.directories:
            child = dirs.get(sub.digest.hash)
            if child is None:
                child = re_pb2.Directory()
                child.ParseFromString(cas.read([sub.digest])[sub.digest.hash])
            walk(child, os.path.join(where, sub.name))

    walk(dirs[root_digest.hash], path)
    blobs = cas.read([d for _, d, _ in files])
    for file_path, d, executable in files:
        with open(file_path, "wb") as fh:
            fh.write(blobs[d.hash])
        os.chmod(file_path, 0o755 if executable else 0o644)


def _tree_of(path, blobs):
    """Builds a Tree for directory path; adds every blob it needs to blobs."""
    children = []

    def directory_of(where):
        d = re_pb2.Directory()
        for name in sorted(os.listdir(where)):
            full = os.path.join(where, name)
            if os.path.islink(full):
                d.symlinks.add(name=name, target=os.readlink(full))
            elif os.path.isdir(full):
                sub = directory_of(full)
                data = sub.SerializeToString()
                children.append(sub)
                d.directories.add(name=name, digest=digest_of(data))
            elif os.path.isfile(full):
                d.files.add(
                    name=name,
                    digest=file_blob(full, blobs),
                    is_executable=os.access(full, os.X_OK),
                )
        return d

    root = directory_of(path)
    tree = re_pb2.Tree(root=root, children=children)
    data = tree.SerializeToString()
    dg = digest_of(data)
    blobs[dg.hash] = (dg, data)
    return dg


def file_blob(path, blobs):
    """Reads a file into ``blobs`` (hash -> (digest, data)); returns its digest."""
    with open(path, "rb") as fh:
        data = fh.read()
    dg = digest_of(data)
    blobs[dg.hash] = (dg, data)
    return dg


def collect_outputs(cas, command, workdir, result):
    """Fills result with the declared outputs found under workdir and uploads them."""
    blobs = {}
    files = list(command.output_files)
    dirs = list(command.output_directories)
    for p in command.output_paths:  # REAPI 2.1: kind decided by what exists.
        (dirs if os.path.isdir(os.path.join(workdir, p)) else files).append(p)
    for rel in files:
        full = os.path.join(workdir, rel)
        if os.path.islink(full):
            result.output_file_symlinks.add(path=rel, target=os.readlink(full))
        elif os.path.isfile(full):
            result.output_files.add(
                path=rel, digest=file_blob(full, blobs), is_executable=os.access(full, os.X_OK)
            )
    for rel in dirs:
        full = os.path.join(workdir, rel)
        if os.path.isdir(full) and not os.path.islink(full):
            result.output_directories.add(path=rel, tree_digest=_tree_of(full, blobs))
    cas.write(blobs)
