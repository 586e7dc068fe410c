// Package accounts is decider's example domain: bank accounts that are
// opened, take deposits and withdrawals, and are closed. It is plain
// functions over plain types (Decide, Evolve) plus Avro schemas; it imports
// topology and schemas only, never the processor or Kafka.
//
// Amounts are minor units. The rejection reasons are the Rejection values
// below (account_exists, no_account, account_closed, invalid_amount,
// insufficient_funds, balance_not_zero).
package accounts

import (
	"embed"
	"fmt"

	"github.com/deciderhq/decider/schemas"
	"github.com/deciderhq/decider/topology"
)

// Namespace is the Avro namespace of the example's records.
const Namespace = "decider.examples.accounts"

// Files holds the example's .avsc files.
//
//go:embed *.avsc
var Files embed.FS

// Command is one of OpenAccount, Deposit, Withdraw, CloseAccount.
type Command interface{ isCommand() }

// Event is one of AccountOpened, Deposited, Withdrawn, AccountClosed.
type Event interface{ isEvent() }

// OpenAccount opens the account for owner.
type OpenAccount struct {
	Owner string `avro:"owner" json:"owner"`
}

// Deposit adds Amount to the balance.
type Deposit struct {
	Amount int64 `avro:"amount" json:"amount"`
}

// Withdraw takes Amount from the balance.
type Withdraw struct {
	Amount int64 `avro:"amount" json:"amount"`
}

// CloseAccount closes an account whose balance is zero.
type CloseAccount struct{}

// AccountOpened records that the account was opened.
type AccountOpened struct {
	Owner string `avro:"owner" json:"owner"`
}

// Deposited records a deposit and the balance after it.
type Deposited struct {
	Amount  int64 `avro:"amount" json:"amount"`
	Balance int64 `avro:"balance" json:"balance"`
}

// Withdrawn records a withdrawal and the balance after it.
type Withdrawn struct {
	Amount  int64 `avro:"amount" json:"amount"`
	Balance int64 `avro:"balance" json:"balance"`
}

// AccountClosed records that the account was closed.
type AccountClosed struct{}

func (OpenAccount) isCommand()  {}
func (Deposit) isCommand()      {}
func (Withdraw) isCommand()     {}
func (CloseAccount) isCommand() {}
func (AccountOpened) isEvent()  {}
func (Deposited) isEvent()      {}
func (Withdrawn) isEvent()      {}
func (AccountClosed) isEvent()  {}

// Account is the state of one account.
type Account struct {
	Opened  bool   `avro:"opened" json:"opened"`
	Closed  bool   `avro:"closed" json:"closed"`
	Owner   string `avro:"owner" json:"owner"`
	Balance int64  `avro:"balance" json:"balance"`
}

// The reasons Decide rejects a command for.
const (
	ErrAccountExists     = topology.Rejection("account_exists")
	ErrNoAccount         = topology.Rejection("no_account")
	ErrAccountClosed     = topology.Rejection("account_closed")
	ErrInvalidAmount     = topology.Rejection("invalid_amount")
	ErrInsufficientFunds = topology.Rejection("insufficient_funds")
	ErrBalanceNotZero    = topology.Rejection("balance_not_zero")
)

// Decide validates a command against an account and returns its events.
func Decide(a Account, c Command) ([]Event, error) {
	if open, ok := c.(OpenAccount); ok {
		if a.Opened {
			return nil, ErrAccountExists
		}
		return []Event{AccountOpened(open)}, nil
	}
	switch {
	case !a.Opened:
		return nil, ErrNoAccount
	case a.Closed:
		return nil, ErrAccountClosed
	}
	switch c := c.(type) {
	case Deposit:
		if c.Amount <= 0 {
			return nil, ErrInvalidAmount
		}
		return []Event{Deposited{Amount: c.Amount, Balance: a.Balance + c.Amount}}, nil
	case Withdraw:
		switch {
		case c.Amount <= 0:
			return nil, ErrInvalidAmount
		case c.Amount > a.Balance:
			return nil, ErrInsufficientFunds
		}
		return []Event{Withdrawn{Amount: c.Amount, Balance: a.Balance - c.Amount}}, nil
	case CloseAccount:
		if a.Balance != 0 {
			return nil, ErrBalanceNotZero
		}
		return []Event{AccountClosed{}}, nil
	}
	return nil, fmt.Errorf("accounts: unhandled command %T", c)
}

// Evolve applies one event to an account.
func Evolve(a Account, e Event) Account {
	switch e := e.(type) {
	case AccountOpened:
		a.Opened, a.Owner = true, e.Owner
	case Deposited:
		a.Balance = e.Balance
	case Withdrawn:
		a.Balance = e.Balance
	case AccountClosed:
		a.Closed = true
	}
	return a
}

// Name is the aggregate type's name.
const Name = "account"

// Registry returns a registry with decider's and the example's schemas,
// bound to the Go types above.
func Registry() (*schemas.Registry, error) {
	reg := schemas.NewRegistry()
	if err := reg.AddFS(Files, "."); err != nil {
		return nil, err
	}
	for _, err := range []error{
		schemas.Bind[Account](reg, Namespace+".Account"),
		schemas.Bind[OpenAccount](reg, Namespace+".OpenAccount"),
		schemas.Bind[Deposit](reg, Namespace+".Deposit"),
		schemas.Bind[Withdraw](reg, Namespace+".Withdraw"),
		schemas.Bind[CloseAccount](reg, Namespace+".CloseAccount"),
		schemas.Bind[AccountOpened](reg, Namespace+".AccountOpened"),
		schemas.Bind[Deposited](reg, Namespace+".Deposited"),
		schemas.Bind[Withdrawn](reg, Namespace+".Withdrawn"),
		schemas.Bind[AccountClosed](reg, Namespace+".AccountClosed"),
	} {
		if err != nil {
			return nil, err
		}
	}
	return reg, nil
}

// Aggregate returns the account aggregate type with the given partition
// count (0: topology.DefaultPartitions).
func Aggregate(partitions int32) (*topology.Aggregate, error) {
	reg, err := Registry()
	if err != nil {
		return nil, err
	}
	n := func(names ...string) []string {
		for i := range names {
			names[i] = Namespace + "." + names[i]
		}
		return names
	}
	return topology.NewAggregate(topology.Spec[Account, Command, Event]{
		Name:       Name,
		Partitions: partitions,
		Schemas:    reg,
		State:      Namespace + ".Account",
		Commands:   n("OpenAccount", "Deposit", "Withdraw", "CloseAccount"),
		Events:     n("AccountOpened", "Deposited", "Withdrawn", "AccountClosed"),
		Decider:    topology.Decider[Account, Command, Event]{Decide: Decide, Evolve: Evolve},
	})
}

// App returns the example app "bank" with its one aggregate type, account.
func App(partitions int32) (*topology.App, error) {
	agg, err := Aggregate(partitions)
	if err != nil {
		return nil, err
	}
	return topology.NewApp("bank", agg)
}
