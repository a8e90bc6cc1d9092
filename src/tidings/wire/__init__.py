"""Sans-I/O codecs: bytes in, values out, and back. Nothing here awaits."""
