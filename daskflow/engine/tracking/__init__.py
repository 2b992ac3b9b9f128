"""The record side: the state tracker and everything that turns runs into records.

It owns the tracker messages (``events``: chunk started, run retrying, chunk ended, logs),
the tracker itself (live states of runs in flight, the queue of records and the writer
thread that turns a batch into run-store updates, ``records``), the console lines a run
prints, and the progress display. It executes nothing and submits nothing.
"""
