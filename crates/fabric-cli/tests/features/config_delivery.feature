Feature: Node config delivery
  The orchestrator delivers a versioned node config; each node applies it
  whole and acknowledges the version, or refuses it and keeps the one it runs.

  Background:
    Given a fabric with fast node heartbeats
    And an admin logged in
    And a single-use join token
    And node "n1" joins with the token and label "zone=a"
    And node "n1" is "ready" in the node list

  Scenario: A node applies a new config and acknowledges its version
    When the admin sets the node log level to "debug"
    Then node "n1" runs node config version 1
    And node "n1" stored node config version 1

  Scenario: A config the node cannot apply is refused and the previous one kept
    When the admin sets the node log level to "debug"
    And node "n1" runs node config version 1
    And the admin sets the node log level to "warn,fabric=["
    Then node "n1" refuses node config version 2
    And node "n1" runs node config version 1
    And node "n1" stored node config version 1
    And node "n1" is "ready" in the node list
