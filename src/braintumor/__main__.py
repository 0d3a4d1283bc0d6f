"""``python -m braintumor`` (also what ``torchrun -m braintumor train ...`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
