"""Use cases behind the routes (they raise service/engine errors; the app turns them into problem+json)."""
