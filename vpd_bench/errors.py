"""User-facing errors: a message that says what is wrong and how to fix it, no traceback."""


class UserError(Exception):
    """Bad input from the user (unknown name, misspelt key, missing package, corrupt file)."""
