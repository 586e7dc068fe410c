package accounts

import (
	"errors"
	"reflect"
	"testing"
)

// given events, when a command, then events or a rejection: the domain's
// rules, tested without a broker.
func TestDecide(t *testing.T) {
	opened := []Event{AccountOpened{Owner: "ada"}}
	funded := append(opened, Deposited{Amount: 100, Balance: 100})
	closed := append(opened, AccountClosed{})
	for _, tc := range []struct {
		name   string
		given  []Event
		when   Command
		then   []Event
		reject error
	}{
		{"open", nil, OpenAccount{Owner: "ada"}, []Event{AccountOpened{Owner: "ada"}}, nil},
		{"open twice", opened, OpenAccount{Owner: "bob"}, nil, ErrAccountExists},
		{"open after close", closed, OpenAccount{Owner: "bob"}, nil, ErrAccountExists},
		{"deposit", opened, Deposit{Amount: 100}, []Event{Deposited{Amount: 100, Balance: 100}}, nil},
		{"deposit before open", nil, Deposit{Amount: 100}, nil, ErrNoAccount},
		{"deposit zero", opened, Deposit{Amount: 0}, nil, ErrInvalidAmount},
		{"deposit negative", opened, Deposit{Amount: -5}, nil, ErrInvalidAmount},
		{"deposit after close", closed, Deposit{Amount: 1}, nil, ErrAccountClosed},
		{"withdraw", funded, Withdraw{Amount: 40}, []Event{Withdrawn{Amount: 40, Balance: 60}}, nil},
		{"withdraw all", funded, Withdraw{Amount: 100}, []Event{Withdrawn{Amount: 100, Balance: 0}}, nil},
		{"withdraw too much", funded, Withdraw{Amount: 101}, nil, ErrInsufficientFunds},
		{"withdraw zero", funded, Withdraw{Amount: 0}, nil, ErrInvalidAmount},
		{"withdraw before open", nil, Withdraw{Amount: 1}, nil, ErrNoAccount},
		{"close empty", opened, CloseAccount{}, []Event{AccountClosed{}}, nil},
		{"close with money", funded, CloseAccount{}, nil, ErrBalanceNotZero},
		{"close before open", nil, CloseAccount{}, nil, ErrNoAccount},
		{"close twice", closed, CloseAccount{}, nil, ErrAccountClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var a Account
			for _, e := range tc.given {
				a = Evolve(a, e)
			}
			got, err := Decide(a, tc.when)
			if !errors.Is(err, tc.reject) || (err != nil) != (tc.reject != nil) {
				t.Fatalf("Decide(%+v, %#v) error = %v, want %v", a, tc.when, err, tc.reject)
			}
			if !reflect.DeepEqual(got, tc.then) {
				t.Fatalf("Decide(%+v, %#v) = %#v, want %#v", a, tc.when, got, tc.then)
			}
		})
	}
}

func TestEvolveFoldsBalance(t *testing.T) {
	a := Account{}
	for _, e := range []Event{AccountOpened{Owner: "ada"}, Deposited{Amount: 5, Balance: 5}, Withdrawn{Amount: 2, Balance: 3}} {
		a = Evolve(a, e)
	}
	if want := (Account{Opened: true, Owner: "ada", Balance: 3}); a != want {
		t.Fatalf("fold = %+v, want %+v", a, want)
	}
}

// The app builds: every schema parses and binds to its Go type, and every
// record round-trips through the registry.
func TestAppAndCodecs(t *testing.T) {
	app, err := App(4)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := app.Aggregate(Name)
	for _, v := range []any{OpenAccount{Owner: "ada"}, Deposit{Amount: 7}, Withdraw{Amount: 3}, CloseAccount{}} {
		name, b, err := agg.Schemas().Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		got, err := agg.DecodeCommand(name, b)
		if err != nil || got != v {
			t.Fatalf("round trip %#v: got %#v, %v", v, got, err)
		}
	}
	st := Account{Opened: true, Owner: "ada", Balance: 42}
	b, err := agg.EncodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := agg.DecodeState(b); err != nil || got != st {
		t.Fatalf("state round trip: %#v, %v", got, err)
	}
	if _, err := agg.DecodeCommand(Namespace+".Deposited", b); err == nil {
		t.Fatal("an event decoded as a command")
	}
}
