"""Errors raised at the project's boundaries; the CLI prints them as one line and exits 2."""


class DaatError(Exception):
    """Base of every error whose message alone tells the user what is wrong and where."""


class DataError(DaatError):
    """A data card, image folder or input file is wrong (the message names it)."""


class ShardFormatError(DaatError):
    """A shard is malformed, unsafe (pickle member) or does not match what the stage needs."""


class TrainingError(DaatError):
    """Training cannot go on (NaN/inf loss, incompatible shards or checkpoint)."""
