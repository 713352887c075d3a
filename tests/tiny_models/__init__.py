"""Tiny random-weight model folders for the local backend's tests, built in code, never
downloaded: each module writes one operation's components in the layout the hub download has."""
