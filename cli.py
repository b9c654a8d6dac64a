"""Run invertnet's command line from a checkout: ``python cli.py reconstruct --layer conv3 assets/astronaut.png``."""

from invertnet.cli import main

if __name__ == "__main__":
    main()
