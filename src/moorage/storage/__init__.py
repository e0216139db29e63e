"""Blob and upload storage behind small driver interfaces; nothing else touches paths."""
