"""WS-Management SOAP envelopes: parse what pywinrm sends, build what Windows answers.

Only the WinRS (remote shell) subset: Create / Delete a shell, Command, Send, Receive, Signal.
Namespaces and element names follow MS-WSMV and the responses a Windows Server answers.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

SOAP = "http://www.w3.org/2003/05/soap-envelope"
ADDRESSING = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSMAN = "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer"
WSMAN_FAULT = "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"

CMD_RESOURCE = f"{SHELL}/cmd"
ACTION_CREATE = f"{TRANSFER}/Create"
ACTION_DELETE = f"{TRANSFER}/Delete"
ACTION_COMMAND = f"{SHELL}/Command"
ACTION_SEND = f"{SHELL}/Send"
ACTION_RECEIVE = f"{SHELL}/Receive"
ACTION_SIGNAL = f"{SHELL}/Signal"
ACTION_FAULT = "http://schemas.dmtf.org/wbem/wsman/1/wsman/fault"
STATE_RUNNING = f"{SHELL}/CommandState/Running"
STATE_DONE = f"{SHELL}/CommandState/Done"
SIGNAL_TERMINATE = f"{SHELL}/signal/terminate"

NS = {"s": SOAP, "a": ADDRESSING, "w": WSMAN, "rsp": SHELL, "x": TRANSFER}


class WsmanFault(Exception):
    """Answered as a SOAP fault with the WSManFault code Windows uses for the same problem."""

    def __init__(self, subcode: str, reason: str, wsman_code: int, *, http_status: int = 500, code: str = "s:Sender") -> None:
        super().__init__(reason)
        self.subcode = subcode
        self.reason = reason
        self.wsman_code = wsman_code
        self.http_status = http_status
        self.code = code


@dataclass
class Request:
    action: str
    message_id: str
    resource_uri: str
    shell_id: str | None
    options: dict[str, str]
    body: ET.Element


def parse_request(data: bytes) -> Request:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise WsmanFault("w:InvalidMessageInformationHeader", f"the request is not well-formed XML: {exc}", 2150858817) from None
    if root.tag != f"{{{SOAP}}}Envelope":
        raise WsmanFault("w:InvalidMessageInformationHeader", "the request is not a SOAP 1.2 envelope", 2150858817)
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)
    if header is None or body is None:
        raise WsmanFault("w:InvalidMessageInformationHeader", "the envelope needs a Header and a Body", 2150858817)

    def text(path: str) -> str:
        node = header.find(path, NS)
        return (node.text or "").strip() if node is not None else ""

    action, message_id = text("a:Action"), text("a:MessageID")
    if not action or not message_id:
        raise WsmanFault("w:InvalidMessageInformationHeader", "a:Action and a:MessageID are required", 2150858817)
    shell_id = None
    for selector in header.findall("w:SelectorSet/w:Selector", NS):
        if selector.get("Name") == "ShellId":
            shell_id = (selector.text or "").strip()
    options = {o.get("Name", ""): (o.text or "") for o in header.findall("w:OptionSet/w:Option", NS)}
    return Request(action, message_id, text("w:ResourceURI"), shell_id, options, body)


def envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{SOAP}" xmlns:a="{ADDRESSING}" xmlns:w="{WSMAN}" xmlns:rsp="{SHELL}" xmlns:x="{TRANSFER}">'
        "<s:Header>"
        f"<a:Action>{escape(action)}</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:To>{ADDRESSING}/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>"
        "</s:Header>"
        f"<s:Body>{body}</s:Body>"
        "</s:Envelope>"
    ).encode()


def fault_envelope(fault: WsmanFault, relates_to: str, machine: str) -> bytes:
    body = (
        "<s:Fault>"
        f"<s:Code><s:Value>{fault.code}</s:Value><s:Subcode><s:Value>{escape(fault.subcode)}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="{WSMAN_FAULT}" Code="{fault.wsman_code}" Machine={quoteattr(machine)}>'
        f"<f:Message>{escape(fault.reason)}</f:Message></f:WSManFault></s:Detail>"
        "</s:Fault>"
    )
    return envelope(ACTION_FAULT, relates_to or "uuid:00000000-0000-0000-0000-000000000000", body)


def shell_created(endpoint: str, shell_id: str) -> str:
    return (
        "<x:ResourceCreated>"
        f"<a:Address>{escape(endpoint)}</a:Address>"
        "<a:ReferenceParameters>"
        f"<w:ResourceURI>{CMD_RESOURCE}</w:ResourceURI>"
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>'
        "</a:ReferenceParameters>"
        "</x:ResourceCreated>"
        f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>{CMD_RESOURCE}</rsp:ResourceUri>"
        "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
    )


def command_response(command_id: str) -> str:
    return f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"


def receive_response(command_id: str, stdout_b64: list[str], stderr_b64: list[str], done: bool, exit_code: int) -> str:
    cid = quoteattr(command_id)
    parts = ["<rsp:ReceiveResponse>"]
    for chunk in stdout_b64:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid}>{chunk}</rsp:Stream>')
    for chunk in stderr_b64:
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid}>{chunk}</rsp:Stream>')
    if done:
        parts.append(f'<rsp:Stream Name="stdout" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:Stream Name="stderr" CommandId={cid} End="true"></rsp:Stream>')
        parts.append(f'<rsp:CommandState CommandId={cid} State="{STATE_DONE}"><rsp:ExitCode>{exit_code}</rsp:ExitCode></rsp:CommandState>')
    else:
        parts.append(f'<rsp:CommandState CommandId={cid} State="{STATE_RUNNING}"></rsp:CommandState>')
    parts.append("</rsp:ReceiveResponse>")
    return "".join(parts)
