"""The one exception type for errors a user can cause and fix."""


class EmflowError(Exception):
    """A problem with the user's input: the message names the file, line or key, and the fix.

    The CLI and the Snakemake scripts print the message alone, without a traceback.
    """
