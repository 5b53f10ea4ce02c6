"""`python -m pipeline ...` == `edgepipe ...`."""
from .cli import main

if __name__ == "__main__":  # worker processes (pipeline/executor) re-import the main module: run nothing there
    raise SystemExit(main())
