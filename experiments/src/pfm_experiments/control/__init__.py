"""The offline RL experiment on MuJoCo locomotion (see experiment.py)."""
