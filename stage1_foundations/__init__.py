"""Stage 1: foundations — what `model.generate` really does

See README.md beside this file for the lesson.
"""
