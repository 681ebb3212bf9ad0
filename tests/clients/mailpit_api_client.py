"""Runs the PyPI `mailpit-api-client` (unchanged) against a mailsafe catcher
and asserts what it gets back.

Usage: python3 mailpit_api_client.py http://127.0.0.1:PORT
Exit code 0 = every call behaved as expected.
"""

import base64
import sys

import httpx
from mailpit.client.api import API


def main(base: str) -> None:
    api = API(base, timeout=10)
    # Messages arrive through the send API (the client cannot send).
    payload = base64.b64encode(b"python attachment").decode()
    r = httpx.post(
        f"{base}/api/v1/send",
        json={
            "From": {"Email": "py@example.com", "Name": "Py Sender"},
            "To": [{"Email": "to@example.com", "Name": "To Person"}],
            "Cc": [{"Email": "cc@example.com"}],
            "Subject": "Hello from python",
            "Text": "python body",
            "Attachments": [{"Content": payload, "Filename": "py.txt", "ContentType": "text/plain"}],
            # The client's Headers model requires Delivered-To (it fails the
            # same way against Mailpit on messages without one).
            "Headers": {"Delivered-To": "to@example.com"},
        },
    )
    r.raise_for_status()
    sent_id = r.json()["ID"]

    messages = api.get_messages()
    assert messages.total == 1, messages
    assert messages.unread == 1, messages
    assert messages.count == 1, messages
    summary = messages.messages[0]
    assert summary.id == sent_id
    assert summary.subject == "Hello from python"
    assert summary.from_.address == "py@example.com"
    assert summary.from_.name == "Py Sender"
    assert summary.attachments == 1

    message = api.get_message(sent_id)
    assert message.id == sent_id
    assert message.subject == "Hello from python"
    assert message.to[0].address == "to@example.com"
    assert message.cc[0].address == "cc@example.com"
    assert message.text.strip() == "python body"
    assert len(message.attachments) == 1
    att = message.attachments[0]
    assert att.file_name == "py.txt"
    assert api.get_message_attachment(sent_id, att.part_id) == "python attachment"

    headers = api.get_message_headers(sent_id)
    assert headers.message_id and headers.message_id[0].startswith("<")
    assert headers.from_[0].startswith('"Py Sender"')
    assert headers.delivered_to == ["to@example.com"]

    # Read status and deletion go out form-encoded from this client.
    api.put_messages([sent_id], "Read", False)
    assert api.get_messages().unread == 1
    api.put_messages([sent_id], "Read", True)
    assert api.get_messages().unread == 0

    r = httpx.post(
        f"{base}/api/v1/send",
        json={"From": {"Email": "py@example.com"}, "To": [{"Email": "x@example.com"}], "Subject": "second"},
    )
    r.raise_for_status()
    api.delete_messages([sent_id])
    left = api.get_messages()
    assert left.total == 1 and left.messages[0].subject == "second", left
    api.delete_messages([])
    assert api.get_messages().total == 0

    try:
        api.get_message("doesnotexist")
    except httpx.HTTPStatusError as e:
        assert e.response.status_code == 404
    else:
        raise AssertionError("unknown ID did not fail")
    print("mailpit-api-client: all checks passed")


if __name__ == "__main__":
    main(sys.argv[1])
