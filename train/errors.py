"""The trainer's refusal: raised wherever a run cannot start or continue, caught by the command line."""


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""
