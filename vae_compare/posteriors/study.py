"""The study's settings of each family, declared in its class body and read by scripts/tune.sh and
scripts/answer.sh through `python -m vae_compare.posteriors`, so that neither script names a family.

tuning_grid:  the family's sweeps in the tuning grid on validation data, each a tuple of Hydra overrides
              (comma-separated values sweep); scripts/tune.sh adds the learning rates and the preset.
answer_runs:  the family's runs in the published answer at the setting the grid selected (AnswerRun); empty
              for a family whose setting has not been selected.
A family's settings are its own: a subclass does not inherit them, it declares its own (a test checks it).
"""

from itertools import product
from typing import NamedTuple

SCALE_TRANSFORMS = (("family.scale_transform=exp", "family.scale_floor=0"),
                    ("family.scale_transform=softplus", "family.scale_floor=1e-3"))
OFFDIAG_SCALES = (("family.offdiag_scale=1,0.1,0.01,0.001",),)


def grid(*axes):
    """One sweep per combination of one alternative from each axis (an alternative is a tuple of overrides)."""
    return tuple(sum(combination, ()) for combination in product(*axes))


class AnswerRun(NamedTuple):
    """One `train -m` call of the answer: its overrides, and the smallest latent_dim it runs at."""

    overrides: tuple
    min_latent_dim: int = 1


def declared(family, setting):
    return vars(family).get(setting, ())


def tuning_sweeps(families):
    """Every family's sweeps of the tuning grid, family=<name> first."""
    return [(f"family={name}",) + sweep
            for name, family in families.items() for sweep in declared(family, "tuning_grid")]


def answer_sweeps(families, latent_dims):
    """The answer's `train -m` calls at the latent sizes `latent_dims` (strings, as given), latent_dim first;
    a run is left out where none of the sizes reaches its min_latent_dim."""
    sweeps = []
    for name, family in families.items():
        for run in declared(family, "answer_runs"):
            dims = [dim for dim in latent_dims if int(dim) >= run.min_latent_dim]
            if dims:
                sweeps.append((f"latent_dim={','.join(dims)}", f"family={name}") + run.overrides)
    return sweeps
