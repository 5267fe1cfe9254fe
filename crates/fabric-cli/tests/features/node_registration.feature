Feature: Node registration
  A machine joins a fabric as a worker node with a short-lived join token,
  which buys it a credential of its own, and reports what it can run.

  Background:
    Given a fabric with fast node heartbeats
    And an admin logged in

  Scenario: A node joins with a single-use token and shows as ready
    Given a single-use join token
    When node "n1" joins with the token and label "gpu=true"
    Then node "n1" is "ready" in the node list
    And node "n1" has the label "gpu=true"
    And node "n1" offers isolation "none"
    And node "n1" answers its readiness check with 200

  Scenario: A single-use token admits one node only
    Given a single-use join token
    When node "n1" joins with the token and label "zone=a"
    And node "n1" is "ready" in the node list
    And node "n2" tries to join with the same token
    Then the join of node "n2" is refused because the token was "already used"
    And node "n2" is not in the node list

  Scenario: A revoked token admits nobody
    Given a single-use join token
    When the admin revokes the token
    And node "n1" tries to join with the same token
    Then the join of node "n1" is refused because the token was "revoked"

  Scenario: A removed node's credential stops working
    Given a single-use join token
    When node "n1" joins with the token and label "zone=a"
    And node "n1" is "ready" in the node list
    And the admin removes node "n1"
    Then node "n1"'s credential is refused
    And the node process of "n1" exits

  Scenario: A node that stops reporting becomes unreachable
    Given a single-use join token
    When node "n1" joins with the token and label "zone=a"
    And node "n1" is "ready" in the node list
    And the node process of "n1" is killed
    Then node "n1" is "unreachable" in the node list
