"""Tests of workers/notify/: the sender, URL checks and delivery."""

PUBLIC_V4 = "93.184.216.34"  # only ever validated, never contacted
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
