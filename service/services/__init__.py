"""Use cases behind the routes (they raise SecateursErrors; service/errors.py turns them into problem+json)."""
