"""The project's one error hierarchy: whose fault a failure is decides how it is reported.

    BreakhisError          every error the project raises on purpose
      UserInputError       bad input from the person at the keyboard: a file, a folder, an option.
                           The CLI exits 2 with the message alone; the app shows the message.
        ModelFolderError   a model folder that is missing, damaged or of the wrong kind
                           (the user named the folder).
        ImageError         an image file that cannot be used (empty, truncated, a bomb, not an image).
        DatasetError       a data set that cannot be fetched or has no BreakHis images.
        JobError           a training job that cannot be started or controlled from the app.
    Cancelled              a run stopped on request (SIGTERM, the Retrain page's cancel button).

Anything else is a bug: the CLI exits 1 and logs the traceback. UserInputError is a ValueError too,
so code that validated with ValueError before keeps catching it.
"""

from __future__ import annotations


class BreakhisError(Exception):
    """Base of every error the project raises on purpose."""


class UserInputError(BreakhisError, ValueError):
    """The input is wrong (a file, a folder, an option), not the program: exit code 2, no traceback."""


class ModelFolderError(UserInputError):
    """A model folder is missing, damaged, tampered with or of the wrong kind."""


class ImageError(UserInputError):
    """A user-facing reason why an image cannot be used; str(error) is shown in the app."""


class DatasetError(UserInputError):
    """A user-facing reason the data set could not be fetched or indexed."""


class JobError(UserInputError):
    """A background job cannot be started or controlled; the message is shown to the user."""


class Cancelled(BaseException):
    """A run stopped on request. A BaseException, like KeyboardInterrupt, so that the `except
    Exception` guards around optional steps (heat maps, figures) never swallow a cancellation."""
