"""``python -m autoscope`` runs the command-line interface."""

from autoscope.agents.cli import main

if __name__ == "__main__":
    main()
