"""Stage 3: retrieval — RAG that beats "chunk, embed, top-k", with numbers

See README.md beside this file for the lesson.
"""
