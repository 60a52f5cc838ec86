"""vae-compare: diagonal vs full-covariance Gaussian posteriors for VAEs, measured."""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, unwritable folder): reported in one line."""
