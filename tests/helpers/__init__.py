"""Helpers the tests share (import as ``from helpers.x import y``): no test module imports another test module."""
