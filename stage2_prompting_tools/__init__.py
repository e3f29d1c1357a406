"""Stage 2: prompting and tools — prompts as code, models wired to the world

See README.md beside this file for the lesson.
"""
