"""Stage 5: serving and operations — many users, known costs, traced answers, gated quality

See README.md beside this file for the lesson.
"""
