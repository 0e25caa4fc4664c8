"""``python -m fastdino_cli`` (also what ``accelerate launch -m fastdino_cli`` runs)."""

from fastdino_cli.cli import main

if __name__ == "__main__":
    main()
