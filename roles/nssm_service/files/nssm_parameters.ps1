# Set a service's NSSM parameters (registry values under HKLM\<Path> and its subkeys AppExit and
# AppEvents\<event>) in one round trip instead of one win_regedit task per value.
# Idempotent: only values that differ are written (or removed, for state=absent); their names are the
# output and $Ansible.Changed is true only then. Check mode reports without writing (SupportsShouldProcess).
# The environment arrives as a SecureString (sensitive_parameters): it never appears in module args or logs.
# The .NET registry API is used because it sets a key's default value (name '') like any other.
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)][string]$Path,
    [Parameter(Mandatory)][object[]]$Values,
    [System.Security.SecureString]$Environment
)
# win_powershell starts every script with Changed = $true.
$Ansible.Changed = $false
$ErrorActionPreference = 'Stop'
$kinds = @{
    string       = [Microsoft.Win32.RegistryValueKind]::String
    expandstring = [Microsoft.Win32.RegistryValueKind]::ExpandString
    multistring  = [Microsoft.Win32.RegistryValueKind]::MultiString
    dword        = [Microsoft.Win32.RegistryValueKind]::DWord
}
$hklm = [Microsoft.Win32.Registry]::LocalMachine

$wanted = @(foreach ($v in $Values) {
        $sub = [string]$v.key
        @{
            Key    = if ($sub) { "$Path\$sub" } else { $Path }
            Name   = [string]$v.name
            Kind   = $kinds[[string]$v.type]
            Data   = $v.data
            Absent = ([string]$v.state -eq 'absent')
        }
    })
if ($null -ne $Environment) {
    $plain = [System.Net.NetworkCredential]::new('', $Environment).Password
    $lines = [string[]]@($plain -split "`n" | Where-Object { $_ -ne '' })
    $wanted += @{ Key = $Path; Name = 'AppEnvironmentExtra'; Kind = $kinds['multistring']; Data = $lines; Absent = $false }
}

foreach ($w in $wanted) {
    if ($null -eq $w.Kind) { throw "Unsupported registry type for $($w.Name)" }
    $label = "HKLM\$($w.Key)\$($w.Name)"
    $key = $hklm.OpenSubKey($w.Key)
    $present = ($null -ne $key) -and ($key.GetValueNames() -contains $w.Name)
    if ($w.Absent) {
        if ($present) {
            if ($PSCmdlet.ShouldProcess($label, 'Remove registry value')) {
                $writable = $hklm.OpenSubKey($w.Key, $true)
                $writable.DeleteValue($w.Name)
                $writable.Close()
            }
            $Ansible.Changed = $true
            $label
        }
        if ($key) { $key.Close() }
        continue
    }
    # Not a switch expression: PowerShell unrolls an array a switch clause outputs, and SetValue needs a
    # string[] for REG_MULTI_SZ (none, one or several lines).
    if ($w.Kind -eq [Microsoft.Win32.RegistryValueKind]::DWord) { $data = [int]$w.Data }
    elseif ($w.Kind -eq [Microsoft.Win32.RegistryValueKind]::MultiString) {
        # A cast assigned as is stays a string[] (no type constraint on $data: it holds other kinds too).
        $data = [string[]]@($w.Data | Where-Object { $null -ne $_ })
    }
    else { $data = [string]$w.Data }
    $same = $false
    if ($present) {
        $have = $key.GetValue($w.Name, $null, [Microsoft.Win32.RegistryValueOptions]::DoNotExpandEnvironmentNames)
        $same = ($key.GetValueKind($w.Name) -eq $w.Kind) -and ((@($have) -join "`n") -ceq (@($data) -join "`n"))
    }
    if ($key) { $key.Close() }
    if (-not $same) {
        if ($PSCmdlet.ShouldProcess($label, 'Set registry value')) {
            $writable = $hklm.CreateSubKey($w.Key)
            $writable.SetValue($w.Name, $data, $w.Kind)
            $writable.Close()
        }
        $Ansible.Changed = $true
        $label
    }
}
