"""What runs on compute nodes, inside jobs: ``python -m llamantino.job.<command>``.

Job scripts call these module paths, so they are stable; a user never types them.
"""

JOB_COMMANDS = ("envcheck", "finish", "evaluate", "prepare", "download", "push", "release")
