"""`python -m controller` is the `ffrtmp` command."""

from controller.cli.main import main

if __name__ == "__main__":
    main()
