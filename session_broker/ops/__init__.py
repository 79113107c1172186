"""Operator tools: the CLI, the web pages, metrics, the stack runner and Redis ACLs.

They read the broker's state through ``session_broker.core``; nothing below imports them."""
