"""User-facing errors: the CLI turns these into a message and exit code 2, the server into a 4xx."""


class UserError(ValueError):
    """Something the user asked for or supplied is wrong; the message says what."""
