"""``python -m proof_messenger.cli``: the same command as the ``proof-messenger`` script."""

from .main import main

if __name__ == "__main__":
    main()
