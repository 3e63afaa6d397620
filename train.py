"""Train an NRP purifier: `python train.py experiment=demo` (see README and conf/)."""
from nrp_lightning.train import main

if __name__ == "__main__":
    main()
