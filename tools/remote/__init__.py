"""The local remote-execution stack (start, stop, status) and its REAPI worker."""
