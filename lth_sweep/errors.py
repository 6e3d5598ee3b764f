"""The one exception type for a user's mistake: the CLI prints it on one line and exits 2."""


class UserError(Exception):
    """Bad input: `key` names the offending setting, the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message
