Feature: A task in a sandbox calls its model through the fabric
  An agent's sandbox has an inference endpoint of its own at localhost:11434
  (OLLAMA_BASE_URL): the fabric's gateway, metered against the agent, with no
  credentials inside, a 10 MiB request limit; and a task's output is kept up
  to the output limit, the rest cut off and flagged.

  Background:
    Given a fabric whose gateway calls a mock Ollama
    And an admin logged in
    And an agent "asks" at isolation "process" that may read the test Python

  Scenario: A task chats with the official ollama client from inside its sandbox
    When a task of agent "asks" chats "hello from the sandbox" with the ollama client
    Then the task completes and its output contains "hello from the sandbox"
    And the call is metered against agent "asks"

  Scenario: A request over 10 MiB is refused with 413 and never leaves
    When a task of agent "asks" posts 11 MiB to its inference endpoint
    Then the task completes and its output contains "413"
    And the mock Ollama received no chat

  Scenario: Output beyond the limit is cut off and flagged
    When a task of agent "asks" prints 1200000 bytes
    Then the task completes with its stdout truncated
