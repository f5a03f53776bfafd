"""The lab: real services on this machine that stand in for the outside world."""
