"""Test support shared by every suite: real server processes on free ports."""
