"""Stage 4: fine-tuning and alignment — data quality decides the result

See README.md beside this file for the lesson.
"""
