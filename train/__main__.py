"""``python -m fcnseg.train ...`` = ``fcn-train ...`` (handy under ``torchrun -m``)."""

from .cli import train_main

if __name__ == "__main__":
    train_main()
