"""`python -m budgetlora ...` (and `accelerate launch -m budgetlora ...`)."""

from .cli import main

raise SystemExit(main())
