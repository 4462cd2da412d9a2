"""ALU: unlearning by a chain of LLM agents (audit, rewrite, critic, composer), no weight updates.

`agents.alu_method.AluMethod` is the pipeline plug-in ("alu"); `agents.chain` runs the agent
calls and parses their replies; `agents.prompts` holds the prompt templates and data fences.
"""
