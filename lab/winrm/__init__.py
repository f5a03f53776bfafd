"""A small WS-Management responder standing in for a Windows machine's WinRM listener."""

from lab.winrm.host import Answer, Recorded, Rule, WindowsHost
from lab.winrm.responder import WinRmResponder

__all__ = ["Answer", "Recorded", "Rule", "WindowsHost", "WinRmResponder"]
