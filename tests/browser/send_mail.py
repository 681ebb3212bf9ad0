#!/usr/bin/env python3
"""Sends test mail over real SMTP with Python's smtplib.

Reads a JSON spec on stdin: {"port": N, "messages": [{from, to, subject,
text, html, headers, inline: [{cid, png_b64}], attachments: [{filename,
content_type, data}]}]} and delivers every message in one SMTP session.
Exits non-zero if the server refuses anything.
"""
import base64
import json
import smtplib
import sys
from email.message import EmailMessage


def build(spec):
    msg = EmailMessage()
    msg["From"] = spec.get("from", "Sender <sender@example.test>")
    msg["To"] = spec.get("to", "Receiver <receiver@example.test>")
    msg["Subject"] = spec.get("subject", "test")
    for name, value in spec.get("headers", {}).items():
        msg[name] = value
    msg.set_content(spec.get("text", "plain text body\n"))
    html = spec.get("html")
    if html is not None:
        msg.add_alternative(html, subtype="html")
        html_part = msg.get_payload()[-1]
        for img in spec.get("inline", []):
            html_part.add_related(
                base64.b64decode(img["png_b64"]),
                maintype="image",
                subtype="png",
                cid="<%s>" % img["cid"],
                filename=img.get("filename"),
            )
    for att in spec.get("attachments", []):
        maintype, subtype = att.get("content_type", "application/octet-stream").split("/", 1)
        msg.add_attachment(
            att["data"].encode(), maintype=maintype, subtype=subtype, filename=att["filename"]
        )
    return msg


def main():
    spec = json.load(sys.stdin)
    with smtplib.SMTP("127.0.0.1", int(spec["port"]), timeout=10) as s:
        for m in spec["messages"]:
            s.send_message(build(m))


if __name__ == "__main__":
    main()
