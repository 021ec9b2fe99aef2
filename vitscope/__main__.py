"""`python -m vitscope ...` (and `torchrun -m vitscope train ...`) run the CLI."""
from vitscope.cli import main

if __name__ == "__main__":
    main()
