"""``python -m koemo``: the same CLI as the ``koemo`` script (for a machine where koemo is on the path but not installed)."""

from koemo.cli import main

if __name__ == "__main__":
    main()
