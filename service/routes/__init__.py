"""HTTP routes: thin handlers that validate and make one service call."""
