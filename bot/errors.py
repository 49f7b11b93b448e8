"""The one base class of failures whose message is written for the user.

The host shows ``str(exc)`` of any UserFacingError as the chat reply's error and logs no
traceback; anything else is a bug, logged in full. Each layer raises its own subclass
(UnknownModel, BackendError, SourceError, GenerationFailed and its kinds), so that callers
branch on types, never on message text.
"""


class UserFacingError(Exception):
    """A failure a user can understand (and usually act on); str() is the message."""
