"""`python -m pipeline ...` == `edgepipe ...`."""
from .cli import main

raise SystemExit(main())
